"""Use cases every adapter shares (CLI, routes, tasks, DICOM handlers): each adapter parses, calls one, and presents."""
