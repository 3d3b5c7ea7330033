//! `fanout-tui`: the live console for Fanout gateways.
//!
//! # Shape
//! - [`api`]: the admin API's JSON (stats, targets, registry) as lenient
//!   serde types; bad data becomes an error line, never a panic.
//! - [`sse`]: incremental, bounded server-sent events parser.
//! - [`state`]: everything shown, as plain data; rates come from consecutive
//!   snapshots; no clock is read there (the event loop sets `now`).
//! - [`keys`]: key bindings, mapping a key to state changes and [`state::Command`]s.
//! - [`ui`]: `render(&State, &mut Frame)`, pure.
//! - [`client`]: the only IO: HTTP/1.1 to the admin API (hyper-util), one
//!   stats stream task per gateway with reconnect and backoff.
//!
//! The binary (`src/main.rs`) owns the terminal and the one event loop:
//! terminal events, a render tick and the gateways' messages.

pub mod api;
pub mod client;
pub mod fmt;
pub mod keys;
pub mod sse;
pub mod state;
pub mod ui;
