#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = caisson_fuzz::cni_result(data);
});
