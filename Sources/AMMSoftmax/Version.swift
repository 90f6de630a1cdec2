/// The library version, "MAJOR.MINOR.PATCH"; the header's AMM_VERSION_* name the same.
let libraryVersion: StaticString = "0.1.0"
