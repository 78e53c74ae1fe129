//! The conformance suite (see the module docs once written).
