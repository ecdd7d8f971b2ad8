"""Weekly model tuning stages (not part of the nightly ORDER)."""
