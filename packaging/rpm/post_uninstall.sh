# session-agent %postun. The configuration (%config(noreplace)) and the recordings in
# /var/lib/session-agent are kept on erase (rpm has no purge): delete them by hand with
#   rm -rf /etc/session-agent /var/lib/session-agent
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
