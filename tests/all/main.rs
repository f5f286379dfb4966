//! End-to-end tests: each starts the real `invis serve` on 127.0.0.1 and
//! drives it over HTTP as the four roles would. One test binary, one module
//! per area.

mod confinement;
mod disclosure;
mod duties;
mod examples;
mod fairshare;
mod fixture;
mod governance;
mod i15_review;
mod i19_review;
mod interop;
mod keys;
mod ledger;
mod nonreversibility;
mod population;
mod reconstruction;
mod refusals;
mod release;
mod spine;
mod timing;
mod witness;
mod workspace;
