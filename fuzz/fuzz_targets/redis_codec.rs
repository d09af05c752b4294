#![no_main]
//! See `tower_session_guard::fuzzing::redis_codec` for the input's layout and the rules checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_session_guard::fuzzing::redis_codec(data));
