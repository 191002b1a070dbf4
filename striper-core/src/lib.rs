//! striper core
