# session-agent %post ($1: 1 first install, 2 upgrade).
# State: root only (the unit's StateDirectoryMode says the same). Not a packaged directory
# entry: see the note in Cargo.toml's generate-rpm assets.
install -d -m 0700 /var/lib/session-agent
# First install: enabled or not as the system's presets say (as Fedora's %systemd_post
# does; add `enable session-agent.service` to a file in /usr/lib/systemd/system-preset/
# or /etc/systemd/system-preset/ to have it enabled), and started if that enabled it.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset session-agent.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -eq 1 ]; then
        if systemctl is-enabled --quiet session-agent.service 2>/dev/null; then
            systemctl start session-agent.service || :
        else
            echo "session-agent: not enabled by the system's presets; run: systemctl enable --now session-agent" >&2
        fi
    else
        systemctl try-restart session-agent.service || :
    fi
fi
