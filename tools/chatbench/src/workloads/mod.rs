//! The workloads, one module each (the five of issue 8, and issue 11's
//! hostile `login-storm`). Each sets up what it
//! needs (users from the shared pool, fresh rooms), measures, checks, and
//! returns one result object.

pub mod accounts;
pub mod ceiling;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod presence;
pub mod resume;
pub mod storm;
