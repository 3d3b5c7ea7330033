//! End-to-end tests for Fanout: they start the real `fanout` binary and real
//! peers (Prometheus, victoria-metrics, PostgreSQL) on loopback, the way a user
//! would. The tests live in `tests/tests/`; this library holds their helpers.

pub mod fanout;
pub mod fleet;
pub mod prometheus;
pub mod rounds;
pub mod tmux;
