#![no_main]
// Every nitro-net parser of untrusted input, selected by the first byte: tunnel requests and
// responses (with re-encoding round trips), hybrid vsock control lines, HTTP CONNECT, SOCKS5,
// PROXY protocol v2, netlink replies, policy files, host names, transport addresses, and (first
// byte >= 250) the in-enclave DNS decision and the check of a forwarded DNS answer.
// Must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nitro_net::internal::fuzz_protocol(data);
});
