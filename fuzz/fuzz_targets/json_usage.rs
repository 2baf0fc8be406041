//! The JSON usage reader: bodies pass through unchanged; chunking never changes the usage.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((chunk, body)) = data.split_first() else { return };
    keyward_proxy::fuzzing::json_usage(body, usize::from(*chunk));
});
