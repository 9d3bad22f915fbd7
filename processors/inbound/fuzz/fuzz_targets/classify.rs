// Feeds arbitrary bytes to classify() and inspect_json(): neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mailpipe_inbound::classify(data);
    let _ = mailpipe_inbound::inspect_json("fuzz", data);
});
