//! dynia's data plane: the L7 proxy that replaces HAProxy on every node.
