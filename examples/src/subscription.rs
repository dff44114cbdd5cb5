//! A subscription with a free trial that ends by itself (seed 003: "the trial itself
//! becomes an object. When created, it sets an alarm for fourteen days hence. The
//! alarm fires, the object transitions to an expired state").
//!
//! One [`Subscription`] object per customer. [`Subscription::start_trial`] grants a
//! trial of some days and schedules the `end_trial` alarm at its end;
//! [`Subscription::subscribe`] converts (and cancels the alarm); if the customer does
//! not, the alarm turns the trial into [`Plan::Expired`]. The plan lives in the
//! object's key-value storage (`ctx.storage()`) under the key `plan`.

use durable::{alarm, durable_object, Context, ReadContext};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The longest trial, in days.
pub const MAX_TRIAL_DAYS: u32 = 365;

/// The key of the plan in the object's key-value storage.
const PLAN_KEY: &str = "plan";
/// The key of the `end_trial` alarm (one per subscription).
const TRIAL_ALARM_KEY: &str = "trial";

/// Where a customer stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Plan {
    /// Never started a trial nor subscribed.
    None,
    /// In a free trial that ends at `ends`.
    Trial {
        /// When the trial ends.
        ends: SystemTime,
    },
    /// Subscribed.
    Active,
    /// The trial ended without a subscription.
    Expired,
}

/// Why a subscription call failed; the call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SubscriptionError {
    /// A subscriber cannot start a trial.
    #[error("already subscribed")]
    AlreadySubscribed,
    /// A customer gets one trial.
    #[error("the trial was used already")]
    TrialUsed,
    /// The arguments make no sense.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<durable::Error> for SubscriptionError {
    fn from(e: durable::Error) -> Self {
        SubscriptionError::Storage(e.to_string())
    }
}

/// One customer's subscription: its plan, cached in memory while active.
pub struct Subscription {
    plan: Plan,
}

#[durable_object]
impl Subscription {
    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> {
        let plan = ctx.storage().get(PLAN_KEY)?.unwrap_or(Plan::None);
        Ok(Subscription { plan })
    }

    /// Start a free trial of `days` days (1 to [`MAX_TRIAL_DAYS`]); returns the new
    /// plan. A customer gets one trial, and subscribers none.
    pub async fn start_trial(
        &mut self,
        ctx: &mut Context,
        days: u32,
    ) -> Result<Plan, SubscriptionError> {
        if days == 0 || days > MAX_TRIAL_DAYS {
            return Err(SubscriptionError::Invalid(format!(
                "a trial lasts from 1 to {MAX_TRIAL_DAYS} days, not {days}"
            )));
        }
        match self.plan {
            Plan::None => {}
            Plan::Active => return Err(SubscriptionError::AlreadySubscribed),
            Plan::Trial { .. } | Plan::Expired => return Err(SubscriptionError::TrialUsed),
        }
        let ends = ctx.now() + Duration::from_secs(u64::from(days) * 24 * 3600);
        let plan = Plan::Trial { ends };
        ctx.storage().put(PLAN_KEY, &plan)?;
        Self::schedule_end_trial(ctx, ends, TRIAL_ALARM_KEY)?;
        self.plan = plan.clone();
        Ok(plan)
    }

    /// Subscribe (from a trial, after it expired, or straight away); cancels the end
    /// of a running trial. Subscribing again changes nothing.
    pub async fn subscribe(&mut self, ctx: &mut Context) -> Result<Plan, SubscriptionError> {
        if self.plan == Plan::Active {
            return Ok(Plan::Active);
        }
        ctx.storage().put(PLAN_KEY, &Plan::Active)?;
        Self::cancel_end_trial(ctx, TRIAL_ALARM_KEY)?;
        self.plan = Plan::Active;
        Ok(Plan::Active)
    }

    /// The plan now (a trial past its end shows as expired even before the
    /// `end_trial` alarm has run).
    pub async fn status(&self, ctx: &ReadContext) -> Plan {
        match self.plan {
            Plan::Trial { ends } if ends <= ctx.now() => Plan::Expired,
            ref plan => plan.clone(),
        }
    }

    /// The `end_trial` alarm: a trial that has reached its end becomes
    /// [`Plan::Expired`]. Idempotent: any other plan is left alone.
    #[alarm]
    async fn end_trial(&mut self, ctx: &mut Context) -> Result<(), SubscriptionError> {
        let Plan::Trial { ends } = self.plan else {
            return Ok(());
        };
        if ends > ctx.now() {
            // Not due yet (only if a schedule was replaced oddly): wait for the end.
            Self::schedule_end_trial(ctx, ends, TRIAL_ALARM_KEY)?;
            return Ok(());
        }
        ctx.storage().put(PLAN_KEY, &Plan::Expired)?;
        self.plan = Plan::Expired;
        Ok(())
    }
}
