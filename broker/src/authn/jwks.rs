//! JWKS sources and cache. STUB.
