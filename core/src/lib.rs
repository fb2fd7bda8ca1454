//! Pure protocol logic of Harambee: the round state machine, aggregation, update validation
//! and the byte encoding of parameter vectors.
//!
//! Nothing here does IO: no sockets, files, clock or async runtime. Time comes in as an
//! argument (`std::time::Instant`), so the coordinator's driver and the tests decide what
//! "now" is. The drivers (`coordinator`, `agent`) own the network, the database and the
//! model training; they feed inputs into these state machines and act on the events they
//! emit, persisting every durable step before they act on it.

#![deny(clippy::unwrap_used)]

pub mod aggregate;
pub mod params;
pub mod round;
pub mod strategy;

pub use aggregate::FedAvg;
pub use params::{UpdateError, validate_update};
pub use round::{Event, ParticipantStatus, Round, RoundConfig, Stage};

use serde::{Deserialize, Serialize};

/// A facility, as named by its certificate (`harambee://agent/<facility>`): who a round
/// selects, aggregates over and drops. ("Agent" names the process that acts for it.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FacilityId(String);

impl FacilityId {
    pub fn new(name: impl Into<String>) -> FacilityId {
        FacilityId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for FacilityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maps and sets keyed by facility are looked up with a plain name.
impl std::borrow::Borrow<str> for FacilityId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A facility id reads as its name wherever a `&str` is taken.
impl std::ops::Deref for FacilityId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for FacilityId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for FacilityId {
    fn from(name: String) -> FacilityId {
        FacilityId(name)
    }
}

impl From<&str> for FacilityId {
    fn from(name: &str) -> FacilityId {
        FacilityId(name.to_owned())
    }
}

impl From<FacilityId> for String {
    fn from(id: FacilityId) -> String {
        id.0
    }
}

impl PartialEq<str> for FacilityId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FacilityId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
