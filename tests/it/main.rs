//! One integration-test binary (fast to link, one place for the harness).
#![allow(unreachable_pub)]

mod agent;
mod architecture;
mod audit;
mod aws;
mod aws_cli;
mod cli;
mod client;
mod client_port;
mod commands;
mod dev;
mod doctor;
mod export;
mod gateway_bad_input;
mod gateway_documents;
mod gateway_relay;
mod kms;
mod packaging;
mod port;
mod protocol;
mod pty_shim;
mod recording;
mod recovery;
mod reliability;
mod replay;
mod resources;
mod service;
mod sessions;
mod support;
mod trust;
mod typed_commands;
mod wine;
