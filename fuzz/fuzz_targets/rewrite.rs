//! Path, query and header rewriting: the upstream URL keeps the base's scheme, host, port
//! and path prefix, whatever the client sends (checked against the `url` crate).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xFF: path, query, then header name/value pairs.
    let mut fields = data.split(|b| *b == 0xFF);
    let path = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let rest: Vec<&[u8]> = fields.collect();
    let headers: Vec<(&[u8], &[u8])> = rest.chunks(2).filter(|p| p.len() == 2).map(|p| (p[0], p[1])).collect();
    keyward_proxy::fuzzing::rewrite(&path, &query, &headers);
});
