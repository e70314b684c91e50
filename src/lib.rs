//! Parlor: a small, fast, federated chat server with a documented JSON
//! protocol. See ARCHITECTURE.md for the map of layers.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod fedclient;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod service;
pub mod storage;
pub mod ws;
