//! Link rewriting: streamed and whole rewriting agree, and no provider link survives.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((chunk, body)) = data.split_first() else { return };
    keyward_proxy::fuzzing::links(body, usize::from(*chunk));
});
