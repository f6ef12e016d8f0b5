//! The latch: the on-disk record that the switch has fired (`state_file`). Written atomically
//! (temp file, fsync, rename, fsync dir) before the first Disconnect; cleared only by `rearm`.
//! Placeholder until issue 6 lands.
