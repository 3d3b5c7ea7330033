//! The flag types for sizes and durations, in the one grammar of
//! [`fanout_proto::units`] that flags, `--config`, the registry and
//! `fanout-load` scenario files share (docs/units.md lists every spelling).

use std::str::FromStr;
use std::time::Duration;

/// A size in bytes, in the grammar of [`fanout_proto::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        fanout_proto::units::parse_size(s).map(ByteSize)
    }
}

/// A duration, in the grammar of [`fanout_proto::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        fanout_proto::units::parse_duration(s).map(HumanDuration)
    }
}
