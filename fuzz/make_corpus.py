#!/usr/bin/env python3
"""Writes the seed corpora for the decode_frame fuzz target (protocol.md section 3 layout)
and the smux target (protocol-sessions.md section 2.6)."""
import hashlib, json, os, struct, uuid

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "decode_frame")
os.makedirs(out, exist_ok=True)

def frame(mtype, payload, ptype=0, seq=0, flags=0, created=1700000000000, mid="3fa85f64-5717-4562-b3fc-2c963f66afa6"):
    b = uuid.UUID(mid).bytes
    return (struct.pack(">I", 116) + mtype.encode().ljust(32, b" ") + struct.pack(">IQqQ", 1, created, seq, flags)
            + b[8:] + b[:8] + hashlib.sha256(payload).digest() + struct.pack(">II", ptype, len(payload)) + payload)

ack = json.dumps({"AcknowledgedMessageType": "output_stream_data", "AcknowledgedMessageId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                  "AcknowledgedMessageSequenceNumber": 0, "IsSequentialMessage": True}, separators=(",", ":")).encode()
doc = {"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {"s3BucketName": "{{ bucket }}", "cloudWatchStreamingEnabled": True},
       "parameters": {"bucket": {"type": "String", "default": "b"}}}
inner = json.dumps({"SessionId": "s-1", "DocumentName": "SSM-SessionManagerRunShell", "DocumentContent": doc, "Parameters": {"bucket": ["x"]},
                    "RunAsUser": "", "SessionOwner": "arn:aws:iam::0:user/u"})
shell = json.dumps({"Content": inner, "TaskId": "s-1", "Topic": "t", "SchemaVersion": 1}).encode()
done = json.dumps({"SchemaVersion": 1, "TaskId": "s-1", "FinalTaskStatus": "Success", "S3Bucket": "b"}).encode()
seeds = {
    "tv1_output": frame("output_stream_data", b"hello\r\n", 1, 0, 1),
    "tv2_ack": frame("acknowledge", ack, 0, 0, 3, 1700000000123, "c0ffee00-1234-4abc-8def-0123456789ab"),
    "interactive_shell": frame("interactive_shell", shell),
    "task_complete": frame("agent_task_complete", done),
    "size": frame("input_stream_data", b'{"cols":80,"rows":24}', 3, 1),
    "truncated": frame("output_stream_data", b"hello")[:100],
    "bad_digest": frame("output_stream_data", b"hello")[:-1] + b"X",
    "nul_padded": frame("channel_closed", b'{"SessionId":"s-1"}').replace(b"channel_closed" + b" " * 18, b"channel_closed" + b"\0" * 18),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")

# smux: the first byte picks the split pattern (0: one piece), the rest is smux v1 frames.
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "smux")
os.makedirs(out, exist_ok=True)

def smux(cmd, sid, data=b"", ver=1, length=None):
    return struct.pack("<BBHI", ver, cmd, len(data) if length is None else length, sid) + data

SYN, FIN, PSH, NOP, UPD = range(5)
seeds = {
    "doc_examples": b"\0" + smux(SYN, 3) + smux(PSH, 3, b"hi") + smux(FIN, 3) + smux(NOP, 0),
    "two_streams_split": b"\x05" + smux(SYN, 3) + smux(SYN, 5) + smux(PSH, 5, b"GET / HTTP/1.0\r\n\r\n") + smux(PSH, 3, b"x" * 300)
    + smux(FIN, 5) + smux(PSH, 5, b"late") + smux(FIN, 3),
    "over_cap": b"\x01" + b"".join(smux(SYN, sid) for sid in (3, 5, 7, 9, 11)) + smux(PSH, 9, b"refused") + smux(PSH, 7, b"ok"),
    "dup_syn_unknown_psh": b"\0" + smux(SYN, 3) + smux(SYN, 3) + smux(PSH, 99, b"nobody") + smux(FIN, 99) + smux(PSH, 3, b""),
    "upd": b"\x02" + smux(SYN, 3) + smux(UPD, 3, struct.pack("<II", 10, 262144)),
    "big_psh": b"\x07" + smux(SYN, 3) + smux(PSH, 3, bytes(range(256)) * 128) + smux(PSH, 3, b"tail"),
    "bad_version": b"\0" + smux(SYN, 3) + smux(PSH, 3, b"hi", ver=2),
    "bad_command": b"\x03" + smux(SYN, 3) + smux(7, 3),
    "syn_with_length": b"\0" + smux(SYN, 3, length=2) + b"hi",
    "truncated": b"\x01" + smux(SYN, 3) + smux(PSH, 3, b"hello")[:10],
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
