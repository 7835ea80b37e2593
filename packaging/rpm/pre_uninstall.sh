# session-agent %preun ($1: 0 erase, 1 upgrade). Erase stops and disables the service.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop session-agent.service || :
    fi
    systemctl disable session-agent.service >/dev/null 2>&1 || :
fi
