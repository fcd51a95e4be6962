"""nipype workflow builders (``init_<stage>_wf``) that wire the interfaces together."""
