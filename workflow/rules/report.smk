# Rules of this stage are added by its issue; see docs/contracts.md.
