//! The file trigger: placeholder until issue 6 lands.
