//! The alarm trigger: placeholder until issue 6 lands.
