# session-agent %post ($1: 1 first install, 2 upgrade).
install -d -m 0700 /var/lib/session-agent
if [ "$1" -eq 1 ]; then
    systemctl enable session-agent.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -eq 1 ]; then
        systemctl start session-agent.service || :
    else
        systemctl try-restart session-agent.service || :
    fi
fi
