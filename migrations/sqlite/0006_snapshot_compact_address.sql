-- Snapshot diff with on_delete = "unset_attributes": each key's profile address
-- in a compact binary form (see src/sync/diff/address.rs: the mpid alone, or the
-- key's own identities when the key columns are identities, as length-prefixed
-- bytes) instead of JSON text, which made the snapshot twice its goal of 60 MB
-- per million keys. Keys written before keep their JSON `address` until their
-- next change; new writes leave `address` NULL.
ALTER TABLE diff_snapshot ADD COLUMN address_bin BLOB;
