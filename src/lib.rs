//! Parlor: a small, fast, federated chat server with a documented JSON
//! protocol. See ARCHITECTURE.md for the map of layers.

pub mod protocol;
