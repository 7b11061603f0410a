//! Types and naming rules shared by etcdsnap and programs that consume its records.
