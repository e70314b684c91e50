//! The five workloads of issue 8, one module each. Each sets up what it
//! needs (users from the shared pool, fresh rooms), measures, checks, and
//! returns one result object.

pub mod accounts;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod resume;
