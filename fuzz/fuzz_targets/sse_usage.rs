//! The SSE usage reader: every byte passes through unchanged, in any chunking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((chunk, body)) = data.split_first() else { return };
    keyward_proxy::fuzzing::sse_usage(body, usize::from(*chunk));
});
