"""The versioned bundle store (revisions and channels), and what compares revisions: diff and impact."""
