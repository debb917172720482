"""The synthetic windows benchmark: window designs (`style`), drawing primitives (`draw`), one facade scene
(`scene`) and the seeded domain and target sets (`sets`)."""
