//! reliability (in progress)
