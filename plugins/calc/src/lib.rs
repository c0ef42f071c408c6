//! The calculator agent: the Remote Rollout example's agent loop as a
//! rollout-host plugin.

mod agent;

rollout_guest_sdk::export_agent!(agent::Calculator);
