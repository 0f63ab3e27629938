//! The fake mParticle Events API (filled in by the fake-server work).
