//! The daemon (`kms-killswitch run`): the one place that spawns long-lived tasks and owns
//! shutdown, reload, the latch, enforcement and systemd notification. Placeholder until issue 6.
