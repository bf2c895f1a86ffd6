//! DIDComm v1 building blocks shared by the mediator role, the load harness and the stdio agent:
//! RFC 0019 envelopes, peer DIDs, and a small agent-side client.

pub mod client;
pub mod envelope;
pub mod peer;
