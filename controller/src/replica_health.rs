//! What heartbeats, request failures and the runtime say about one replica: the
//! state machine the local supervisor, the operator and the publisher share. Pure,
//! and a leaf: it depends on nothing else of the crate.

/// What heartbeats and the runtime say about one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Started, no heartbeat has succeeded yet: not routable.
    Starting,
    /// The last heartbeat succeeded: routable.
    Healthy,
    /// A request to it failed to connect; routable again after a good heartbeat.
    Suspect,
    /// Too many heartbeats failed in a row, or the process is gone.
    Failed,
}

/// Health of one replica, driven by heartbeat results, request failures and the
/// runtime's word that the process is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub health: Health,
    pub consecutive_failures: u32,
    /// A heartbeat has succeeded at least once: the replica got as far as serving.
    /// (The operator backs off replacing replicas that never did.)
    pub served: bool,
}

impl HealthState {
    pub fn starting() -> Self {
        Self {
            health: Health::Starting,
            consecutive_failures: 0,
            served: false,
        }
    }

    /// Records one heartbeat. A success makes any replica healthy (an external one
    /// that had failed rejoins); failures count until the threshold, and until then a
    /// healthy replica keeps serving, as HAProxy's `fall` does.
    pub fn record_heartbeat(&mut self, ok: bool, failure_threshold: u32) {
        if ok {
            self.health = Health::Healthy;
            self.consecutive_failures = 0;
            self.served = true;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= failure_threshold {
                self.health = Health::Failed;
            }
        }
    }

    /// A request could not reach the replica: stop routing to it until a heartbeat
    /// says otherwise.
    pub fn mark_suspect(&mut self) {
        if self.health == Health::Healthy {
            self.health = Health::Suspect;
        }
    }

    /// The process is gone: nothing to wait for.
    pub fn mark_exited(&mut self) {
        self.health = Health::Failed;
    }

    pub fn routable(&self) -> bool {
        self.health == Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_becomes_routable_after_its_first_good_heartbeat() {
        let mut state = HealthState::starting();
        assert!(!state.routable());
        state.record_heartbeat(false, 3);
        assert_eq!(state.health, Health::Starting);
        state.record_heartbeat(true, 3);
        assert!(state.routable());
        assert_eq!(state.consecutive_failures, 0);
        assert!(state.served);
    }

    #[test]
    fn failures_below_the_threshold_keep_a_healthy_replica_in_the_ring() {
        let mut state = HealthState::starting();
        state.record_heartbeat(true, 3);
        state.record_heartbeat(false, 3);
        state.record_heartbeat(false, 3);
        assert!(state.routable());
        state.record_heartbeat(false, 3);
        assert_eq!(state.health, Health::Failed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut state = HealthState::starting();
        state.record_heartbeat(false, 2);
        state.record_heartbeat(true, 2);
        state.record_heartbeat(false, 2);
        assert!(state.routable());
    }

    #[test]
    fn suspect_leaves_the_ring_until_a_heartbeat_succeeds() {
        let mut state = HealthState::starting();
        state.record_heartbeat(true, 3);
        state.mark_suspect();
        assert_eq!(state.health, Health::Suspect);
        assert!(!state.routable());
        state.record_heartbeat(true, 3);
        assert!(state.routable());
    }

    #[test]
    fn suspect_does_not_hide_a_failure() {
        let mut state = HealthState::starting();
        state.mark_exited();
        state.mark_suspect();
        assert_eq!(state.health, Health::Failed);
    }
}
