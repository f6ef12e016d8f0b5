//! The signal trigger: placeholder until issue 6 lands.
