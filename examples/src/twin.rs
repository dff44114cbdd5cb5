//! A device twin (seed 001: IoT device state): one object per device holds the
//! state operators want (desired) and the state the device last reported, each
//! versioned. The device fetches what differs, applies it and reports back; the
//! twin says whether it is in sync. A report older than the last one is ignored, so
//! reordered messages cannot move the state backwards.

use durable::{durable_object, Context, Error, ErrorKind, ReadContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One device's twin.
pub struct DeviceTwin {
    desired: BTreeMap<String, String>,
    desired_version: u64,
    reported: BTreeMap<String, String>,
    reported_seq: u64,
}

/// What an operator or the device sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinState {
    /// The wanted settings and their version (bumped on every change).
    pub desired: BTreeMap<String, String>,
    /// The desired version.
    pub desired_version: u64,
    /// What the device reported last, and its report sequence number.
    pub reported: BTreeMap<String, String>,
    /// The last report's sequence number.
    pub reported_seq: u64,
    /// Settings whose reported value differs from the desired one.
    pub pending: BTreeMap<String, String>,
}

const DESIRED: &str = "desired";
const REPORTED: &str = "reported";

impl DeviceTwin {
    fn state(&self) -> TwinState {
        let pending = self
            .desired
            .iter()
            .filter(|(k, v)| self.reported.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        TwinState {
            desired: self.desired.clone(),
            desired_version: self.desired_version,
            reported: self.reported.clone(),
            reported_seq: self.reported_seq,
            pending,
        }
    }
}

#[durable_object]
impl DeviceTwin {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let kv = ctx.storage();
        let (desired, desired_version) = kv.get(DESIRED)?.unwrap_or_default();
        let (reported, reported_seq) = kv.get(REPORTED)?.unwrap_or_default();
        Ok(DeviceTwin {
            desired,
            desired_version,
            reported,
            reported_seq,
        })
    }

    /// Set desired settings (`""` removes one); returns the new desired version.
    pub async fn desire(
        &mut self,
        ctx: &mut Context,
        changes: BTreeMap<String, String>,
    ) -> Result<u64, Error> {
        if changes.len() > 256 {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "at most 256 settings per change",
            ));
        }
        for (k, v) in changes {
            if v.is_empty() {
                self.desired.remove(&k);
            } else {
                self.desired.insert(k, v);
            }
        }
        self.desired_version += 1;
        ctx.storage()
            .put(DESIRED, &(&self.desired, self.desired_version))?;
        Ok(self.desired_version)
    }

    /// The device reports its whole state with a sequence number it increases; an
    /// older or repeated report is ignored. Returns what is still pending.
    pub async fn report(
        &mut self,
        ctx: &mut Context,
        seq: u64,
        state: BTreeMap<String, String>,
    ) -> Result<TwinState, Error> {
        if seq > self.reported_seq {
            self.reported = state;
            self.reported_seq = seq;
            ctx.storage()
                .put(REPORTED, &(&self.reported, self.reported_seq))?;
        }
        Ok(self.state())
    }

    /// Both sides and what differs.
    pub async fn get(&self, _ctx: &ReadContext) -> TwinState {
        self.state()
    }
}
