//! (scenarios land here)
