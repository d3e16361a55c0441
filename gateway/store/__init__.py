"""The store: one interface (base.Store), two backends (memory://, redis://...)."""
