"""Queries → results: what a search asks for (`request`), the four ranking modes
(`searcher`, with MaxSim and late mode's fusion weights in `late`), related
reviews, `seen`, `who` (`people`) and the labelled-query evaluation. Reads the
store; never writes it."""
