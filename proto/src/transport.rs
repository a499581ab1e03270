//! mTLS transport (to be written).
