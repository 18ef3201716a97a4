"""Infrastructure: static checks of the Terraform, and Terraform outputs as pipeline settings."""
