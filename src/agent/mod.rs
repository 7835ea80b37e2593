//! The agent daemon (`session-agent run`): control channel, data channels, sessions.
