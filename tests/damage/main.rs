//! Collections on a damaged heap: one test binary for four groups of cases (each binary costs
//! CI a build and a link), each a module of its own.

mod check_catches;
mod damage_is_corrupt;
mod damaged_collections;
mod own_errors;
mod random_damage;
